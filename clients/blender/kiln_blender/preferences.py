"""The add-on's preferences: where the farm is and the token to use.

They live in Blender's user preferences (userpref.blend), the place Blender
keeps an add-on's settings and secrets, never in a scene's .blend; the
token field is a password field, so it is not shown on screen.
"""

import os

import bpy

from .farm_rest import FarmClient

DEFAULT_FARM_URL = "http://127.0.0.1:7080"


class KilnPreferences(bpy.types.AddonPreferences):
    bl_idname = __package__

    farm_url: bpy.props.StringProperty(
        name="Farm URL",
        description="The Kiln gateway's REST address, e.g. http://farm:7080",
        default=DEFAULT_FARM_URL,
    )
    token: bpy.props.StringProperty(
        name="Access token",
        description="A submitter token from `kiln token create` (empty: the KILN_TOKEN environment variable)",
        subtype="PASSWORD",
    )
    dashboard_url: bpy.props.StringProperty(
        name="Dashboard URL",
        description="Where the farm's web dashboard is; empty means the farm URL",
    )

    def draw(self, context: bpy.types.Context) -> None:
        layout = self.layout
        layout.prop(self, "farm_url")
        layout.prop(self, "token")
        layout.prop(self, "dashboard_url")


def get(context: bpy.types.Context) -> KilnPreferences:
    addon = context.preferences.addons.get(__package__)
    if addon is None:
        raise RuntimeError("the Kiln add-on is not enabled")
    return addon.preferences


def client(context: bpy.types.Context) -> FarmClient:
    """A REST client for the farm the preferences name (FarmError if incomplete)."""
    prefs = get(context)
    return FarmClient(prefs.farm_url, prefs.token or os.environ.get("KILN_TOKEN", ""))


def dashboard_link(context: bpy.types.Context, job_id: str) -> str:
    prefs = get(context)
    base = (prefs.dashboard_url or prefs.farm_url).strip().rstrip("/")
    return f"{base}/jobs/{job_id}"
