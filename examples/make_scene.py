"""Builds Kiln's example scene: a rotating, colour-shifting cube, lit and
rendered with Cycles at a low resolution so it renders in seconds.

Run with: blender -b -Y --factory-startup --python examples/make_scene.py -- OUT.blend
"""
import math
import os
import sys

import bpy

out = os.path.abspath(sys.argv[sys.argv.index("--") + 1] if "--" in sys.argv else "scene.blend")

bpy.ops.wm.read_factory_settings(use_empty=True)
scene = bpy.context.scene
scene.render.engine = "CYCLES"
scene.cycles.samples = 8
# Debian's Blender is built without OpenImageDenoise.
scene.cycles.use_denoising = False
scene.cycles.device = "CPU"
scene.render.resolution_x = 320
scene.render.resolution_y = 180
scene.render.resolution_percentage = 100
scene.render.fps = 24
scene.frame_start = 1
scene.frame_end = 24
scene.render.image_settings.file_format = "PNG"

world = bpy.data.worlds.new("World")
world.use_nodes = True
world.node_tree.nodes["Background"].inputs[0].default_value = (0.05, 0.07, 0.1, 1.0)
scene.world = world

bpy.ops.mesh.primitive_plane_add(size=20, location=(0, 0, -1))
bpy.ops.mesh.primitive_cube_add(size=1.5, location=(0, 0, 0))
cube = bpy.context.active_object
material = bpy.data.materials.new("CubeMaterial")
material.use_nodes = True
bsdf = material.node_tree.nodes["Principled BSDF"]
cube.data.materials.append(material)
for frame, colour in ((1, (0.9, 0.3, 0.1, 1)), (24, (0.1, 0.4, 0.9, 1))):
    bsdf.inputs["Base Color"].default_value = colour
    bsdf.inputs["Base Color"].keyframe_insert("default_value", frame=frame)
cube.rotation_euler = (0, 0, 0)
cube.keyframe_insert("rotation_euler", frame=1)
cube.rotation_euler = (math.radians(30), math.radians(20), math.radians(180))
cube.keyframe_insert("rotation_euler", frame=24)

bpy.ops.object.light_add(type="AREA", location=(3, -3, 5))
bpy.context.active_object.data.energy = 800
bpy.ops.object.camera_add(location=(5, -5, 3.5))
camera = bpy.context.active_object
direction = cube.location - camera.location
camera.rotation_euler = direction.to_track_quat("-Z", "Y").to_euler()
scene.camera = camera

bpy.ops.wm.save_as_mainfile(filepath=out)
print("KILN_EXAMPLE_SAVED", out)
