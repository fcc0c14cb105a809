"""Python client for the Kiln render farm.

`Farm` connects to a gateway; `farm.jobs` submits, watches and downloads,
`farm.assets` moves files by SHA-256, `farm.tokens` manages access tokens.
The messages are the farm's own, generated from proto/kiln/v1 when this
package was built (`kiln_client.v1`).
"""

from .assets import Asset, UploadReport
from .errors import FarmError, IntegrityError, JobNotSucceeded, KilnError
from .farm import Farm
from .jobs import FINAL_STATES, state_name
from .tokens import CreatedToken, role_name
from .v1 import assets_pb2, auth_pb2, jobs_pb2

__all__ = [
    "Asset",
    "CreatedToken",
    "FINAL_STATES",
    "Farm",
    "FarmError",
    "IntegrityError",
    "JobNotSucceeded",
    "KilnError",
    "UploadReport",
    "assets_pb2",
    "auth_pb2",
    "jobs_pb2",
    "role_name",
    "state_name",
]
