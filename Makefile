# make lab   : create .venv if missing, install, check that a broker can be had, open JupyterLab
# make test  : same bootstrap, then the whole suite in lanes: unit tests and every notebook under nbval
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python

.PHONY: lab test doctor strip executed clean

$(VENV)/.installed: pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV) || { echo "could not create $(VENV): install python3-venv (Debian/Ubuntu: sudo apt-get install python3-venv)"; exit 1; }
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[lab,test]'
	@touch $@

# As root on Debian without a broker, `doctor --ensure` offers to apt-get install rabbitmq-server and asks first;
# CI passes DOCTOR_FLAGS=--yes to install without asking.
DOCTOR_FLAGS ?=
doctor: $(VENV)/.installed
	$(PY) -m voicelab doctor --ensure $(DOCTOR_FLAGS)

ROOT_FLAG := $(if $(filter 0,$(shell id -u)),--allow-root,)

lab: doctor
	$(VENV)/bin/jupyter lab $(ROOT_FLAG) notebooks/

# Lanes (tests/lanes.py): the unit tests (TEST_WORKERS pytest-xdist workers) beside the notebooks that count,
# each on its own brokers; then, alone, the notebooks that measure rates and cores. `pytest` alone runs it all serially.
TEST_WORKERS ?= 4
test: doctor
	$(PY) tests/lanes.py --workers $(TEST_WORKERS)

# Before committing a notebook you ran: remove its outputs (tests/test_project.py checks that notebooks/ has none).
strip: $(VENV)/.installed
	$(VENV)/bin/jupyter nbconvert --clear-output --inplace notebooks/*.ipynb

# Executed copies for readers who run nothing: every notebook run top to bottom on a real broker, outputs and plots
# kept, in executed/ (committed). VOICELAB_SCALE sizes the runs (README, "Executed copies").
executed: doctor
	@mkdir -p executed
	@for nb in notebooks/*.ipynb; do echo "executing $$nb"; \
	  $(VENV)/bin/jupyter nbconvert --to notebook --execute --ExecutePreprocessor.timeout=1800 \
	    --output-dir executed "$$nb" || exit 1; done

clean:
	rm -rf $(VENV) *.egg-info
