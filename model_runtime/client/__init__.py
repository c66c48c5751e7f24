"""The model server's client side: the socket exchange, starting a server, and `ServerRuntime`. Light: no torch.

A flow run's tasks import this, and a Prefect worker starts a process per flow run. exchange.py sends
one request and reads its reply, spawn.py starts a detached server under a start lock,
model_server_client.py offers the protocol's requests as calls, runtimes.py the Runtime served by it.
"""
from model_runtime.client.exchange import ConnectionLost, NoServer, ReplyTimeout, StopAsked
from model_runtime.client.model_server_client import ModelServerClient, reply_grace_s
from model_runtime.client.runtimes import ServerRuntime, runtime_for

__all__ = ["ConnectionLost", "ModelServerClient", "NoServer", "ReplyTimeout", "ServerRuntime", "StopAsked", "reply_grace_s", "runtime_for"]
