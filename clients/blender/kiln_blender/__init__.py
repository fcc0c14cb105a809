"""Kiln render farm: submit the open scene to a Kiln farm from Blender.

Installs as a Blender 4.2+ extension (blender_manifest.toml) or, for older
Blenders such as Debian's 3.4, as a legacy add-on (bl_info). Talks to the
farm's REST API with Blender's own Python.

Only register() imports bpy-dependent modules, so the pure modules
(farm_rest, bundle_plan, progress, submission, ...) import, and are unit
tested, outside Blender.
"""

bl_info = {
    "name": "Kiln Render Farm",
    "author": "Kiln",
    "version": (0, 1, 0),
    "blender": (3, 4, 0),
    "location": "Properties > Render > Kiln Render Farm",
    "description": "Submit the open scene to a Kiln render farm and follow it",
    "category": "Render",
}


def _modules():
    from . import operators, panel, preferences, properties, status_bar

    return preferences, properties, operators, panel, status_bar


def register():
    import bpy

    preferences, properties, operators, panel, status_bar = _modules()
    bpy.utils.register_class(preferences.KilnPreferences)
    properties.register()
    for cls in operators.CLASSES:
        bpy.utils.register_class(cls)
    bpy.utils.register_class(panel.RENDER_PT_kiln)
    status_bar.register()


def unregister():
    import bpy

    preferences, properties, operators, panel, status_bar = _modules()
    status_bar.unregister()
    bpy.utils.unregister_class(panel.RENDER_PT_kiln)
    for cls in reversed(operators.CLASSES):
        bpy.utils.unregister_class(cls)
    properties.unregister()
    bpy.utils.unregister_class(preferences.KilnPreferences)
