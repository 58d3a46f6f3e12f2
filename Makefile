# make lab   : create .venv if missing, install, check that a broker can be had, open JupyterLab
# make test  : same bootstrap, then the whole suite: unit tests (TEST_WORKERS at a time), every notebook under nbval
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

# Units in parallel (they mostly wait on brokers starting, restarting, timing out), then the notebooks one at a
# time (they measure rates and cores). `pytest` alone runs both serially.
TEST_WORKERS ?= 4
test: doctor
	$(PY) -m pytest -n $(TEST_WORKERS) --dist loadfile tests
	$(PY) -m pytest notebooks

clean:
	rm -rf $(VENV) *.egg-info
