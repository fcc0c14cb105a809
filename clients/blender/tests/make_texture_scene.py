"""Makes a test scene for the add-on: two camera-filling planes, the left
one showing a green texture kept outside the scene's folder (absolute
path), the right one a blue texture under the scene's own `textures/`
(relative path). Emission shaders and the Standard view transform make
the rendered pixels the textures' colours; a texture the farm does not
find renders magenta, Blender's colour for a missing image.

Run: blender -b -Y --factory-startup --python make_texture_scene.py -- SCENE.blend OUTSIDE.png [MISSING.png]
With MISSING.png, the right plane uses that (nonexistent) file instead.
"""

import os
import sys

import bpy

args = sys.argv[sys.argv.index("--") + 1 :]
scene_path, outside_path = (os.path.abspath(a) for a in args[:2])
missing_path = os.path.abspath(args[2]) if len(args) > 2 else None
scene_dir = os.path.dirname(scene_path)
inside_path = os.path.join(scene_dir, "textures", "inside.png")
os.makedirs(os.path.dirname(inside_path), exist_ok=True)
os.makedirs(os.path.dirname(outside_path), exist_ok=True)

bpy.ops.wm.read_factory_settings(use_empty=True)


def write_png(path, rgb):
    image = bpy.data.images.new(os.path.basename(path), 8, 8)
    image.pixels = [*rgb, 1.0] * 64
    image.filepath_raw = path
    image.file_format = "PNG"
    image.save()
    bpy.data.images.remove(image)


write_png(outside_path, (0.0, 1.0, 0.0))
write_png(inside_path, (0.0, 0.0, 1.0))

scene = bpy.context.scene
scene.render.engine = "CYCLES"
scene.cycles.samples = 2
scene.cycles.use_denoising = False  # Debian's Blender has no OpenImageDenoise
scene.cycles.device = "CPU"
scene.render.resolution_x = 64
scene.render.resolution_y = 32
scene.render.resolution_percentage = 100
scene.render.fps = 24
scene.frame_start = 1
scene.frame_end = 2
scene.render.image_settings.file_format = "PNG"
scene.view_settings.view_transform = "Standard"
world = bpy.data.worlds.new("World")
scene.world = world


def textured_plane(x, image_path, name):
    bpy.ops.mesh.primitive_plane_add(size=2, location=(x, 0, 0))
    plane = bpy.context.active_object
    material = bpy.data.materials.new(name)
    material.use_nodes = True
    nodes, links = material.node_tree.nodes, material.node_tree.links
    nodes.clear()
    texture = nodes.new("ShaderNodeTexImage")
    texture.image = bpy.data.images.load(image_path, check_existing=True) if os.path.exists(image_path) else None
    if texture.image is None:
        texture.image = bpy.data.images.new(name + "-missing", 4, 4)
        texture.image.source = "FILE"
        texture.image.filepath = image_path
    emission = nodes.new("ShaderNodeEmission")
    output = nodes.new("ShaderNodeOutputMaterial")
    links.new(texture.outputs["Color"], emission.inputs["Color"])
    links.new(emission.outputs["Emission"], output.inputs["Surface"])
    plane.data.materials.append(material)
    return texture.image


left = textured_plane(-1, outside_path, "Outside")
right = textured_plane(1, missing_path or inside_path, "Inside")

bpy.ops.object.camera_add(location=(0, 0, 10), rotation=(0, 0, 0))
camera = bpy.context.active_object
camera.data.type = "ORTHO"
camera.data.ortho_scale = 4
scene.camera = camera

bpy.ops.wm.save_as_mainfile(filepath=scene_path)
if not missing_path:
    right.filepath = "//textures/inside.png"
left.filepath = outside_path
bpy.ops.wm.save_as_mainfile(filepath=scene_path)
print("KILN_TEST_SCENE", scene_path, left.filepath, right.filepath)
