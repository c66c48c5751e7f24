"""`python -m model_runtime.server`: the model server, as the client spawns it and `s2v server` runs it."""
import sys

from model_runtime.server.entry import main

sys.exit(main())
