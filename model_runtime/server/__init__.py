"""The model server: one warm model, many clients, one job at a time (`s2v server`).

A Prefect process worker starts a new Python process for every flow run, so a model cached in a flow
run's process dies with it. This long-lived process keeps the model loaded across runs; tasks reach it
over a Unix socket with the original server's protocol (protocol.py), through model_runtime.client.

Cut as Replicate cog's server is: transport.py (the socket, connections, lines), jobs.py (the FIFO
queue and cancel), worker.py (the model's loader thread and the one job worker), model_server.py
(answering requests, tying those together) and entry.py (`run`, `main`).

Threads: the main thread accepts connections; each connection gets a thread that reads its requests
and answers health and status at once; generate and encode_audio become jobs on one FIFO queue worked
by a single worker thread, so the device runs one job at a time in arrival order; the model loads in
its own thread so that health answers `loading` meanwhile.

Cancel: `cancel` is answered at once like health. A queued job it names is answered and dropped; a
running one is stopped by the generation's should_stop hook, asked before every denoising step, which
also stops a job whose client has closed its connection (one poll(2) per step).
"""
from model_runtime.server.entry import main, run
from model_runtime.server.model_server import ModelServer
from model_runtime.server.transport import AlreadyRunning

__all__ = ["AlreadyRunning", "ModelServer", "main", "run"]
