# make lab   : create .venv if missing, install, check that a broker can be had, open JupyterLab
# make test  : same bootstrap, then the whole suite in lanes: unit tests and every notebook under nbval
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python

.PHONY: lab test doctor clean

$(VENV)/.installed: pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV) || { echo "could not create $(VENV): install python3-venv (Debian/Ubuntu: sudo apt-get install python3-venv)"; exit 1; }
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[lab,test]'
	@touch $@

doctor: $(VENV)/.installed
	$(PY) -m voicelab doctor --ensure

ROOT_FLAG := $(if $(filter 0,$(shell id -u)),--allow-root,)

lab: doctor
	$(VENV)/bin/jupyter lab $(ROOT_FLAG) notebooks/

# Lanes (tests/lanes.py): the unit tests (TEST_WORKERS pytest-xdist workers) beside the notebooks that count,
# each on its own brokers; then, alone, the notebooks that measure rates and cores. `pytest` alone runs it all serially.
TEST_WORKERS ?= 4
test: doctor
	$(PY) tests/lanes.py --workers $(TEST_WORKERS)

clean:
	rm -rf $(VENV) *.egg-info
