"""vastrpc: run async Python functions on remote (GPU) workers behind one ``await``."""

from vastrpc._errors import (
    AuthenticationError,
    BundleError,
    CallError,
    CallTimeoutError,
    ContextError,
    ControlServiceError,
    ControlUnavailableError,
    DefinitionError,
    DeploymentError,
    FunctionNotFoundError,
    NotFoundError,
    OverloadedError,
    RemoteError,
    RemoteTraceback,
    SerializationError,
    SessionLostError,
    VastrpcError,
    WorkerUnavailableError,
)
from vastrpc._mode import get_context
from vastrpc.client.output import RemoteOutput
from vastrpc.client.router import CallInfo
from vastrpc.client.session import Session
from vastrpc.config import ClientConfig
from vastrpc.deploy.flow import DeployResult
from vastrpc.deployment import Deployment, RemoteFunction
from vastrpc.image import Autoscaling, Image

__all__ = [
    "AuthenticationError",
    "Autoscaling",
    "BundleError",
    "CallError",
    "CallInfo",
    "CallTimeoutError",
    "ClientConfig",
    "ContextError",
    "ControlServiceError",
    "ControlUnavailableError",
    "DefinitionError",
    "DeployResult",
    "Deployment",
    "DeploymentError",
    "FunctionNotFoundError",
    "Image",
    "NotFoundError",
    "OverloadedError",
    "RemoteError",
    "RemoteFunction",
    "RemoteOutput",
    "RemoteTraceback",
    "SerializationError",
    "Session",
    "SessionLostError",
    "VastrpcError",
    "WorkerUnavailableError",
    "get_context",
]

__version__ = "0.1.0"
