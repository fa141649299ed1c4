"""The conductor, a Flower ServerApp (app.py): the run's settings (settings.py), finding
the agents among the SuperLink's nodes (discovery.py), sending experiences with deadlines
and retries (dispatch.py), and the run itself (run.py)."""
