"""Unit tests of where the add-on puts a scene's files (no Blender needed).
Run: python3 -m unittest discover -s clients/blender/tests"""

import os
import sys
import tempfile
import unittest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from kiln_blender.bundle_plan import (  # noqa: E402
    Dependency,
    bundle_path,
    expand_sequence,
    expand_tiles,
    external_path,
    plan,
)


class BundlePathTests(unittest.TestCase):
    def test_files_under_the_scene_keep_their_relative_place(self):
        self.assertEqual(bundle_path("/proj/shot/textures/wood.png", "/proj/shot"), "textures/wood.png")

    def test_files_elsewhere_are_mirrored_by_absolute_path(self):
        self.assertEqual(bundle_path("/lib/hero/skin.png", "/proj/shot"), "_kiln_external/lib/hero/skin.png")
        self.assertEqual(bundle_path("/proj/shot/../other/x.png", "/proj/shot"), "_kiln_external/proj/other/x.png")

    def test_names_the_farm_reserves_move_out_of_the_way(self):
        self.assertEqual(bundle_path("/proj/shot/scene.blend", "/proj/shot"), "_kiln_external/proj/shot/scene.blend")
        self.assertEqual(
            bundle_path("/proj/shot/outputs/a.png", "/proj/shot"), "_kiln_external/proj/shot/outputs/a.png"
        )

    def test_an_unsaved_scene_mirrors_everything(self):
        self.assertEqual(bundle_path("/tmp/a.png", None), "_kiln_external/tmp/a.png")

    def test_external_paths_have_no_dot_dot_or_empty_parts(self):
        path = external_path("//server//share/../x.png")
        self.assertNotIn("..", path.split("/"))
        self.assertNotIn("", path.split("/"))


class PlanTests(unittest.TestCase):
    def test_local_paths_are_rewritten_to_the_bundle(self):
        block = object()
        dep = Dependency("image 'Green'", "/lib/green.png", "/lib/green.png", ["/lib/green.png"], datablock=block)
        inside = Dependency(
            "image 'Blue'", "//textures/blue.png", "/proj/textures/blue.png", ["/proj/textures/blue.png"], datablock=1
        )
        result = plan([dep, inside], "/proj")
        self.assertEqual([e.path for e in result.entries], ["_kiln_external/lib/green.png", "textures/blue.png"])
        self.assertEqual(result.rewrites, [(block, "filepath", "//_kiln_external/lib/green.png")])
        self.assertEqual(result.warnings, [])

    def test_a_udim_template_keeps_its_token(self):
        files = expand_tiles("/lib/skin.<UDIM>.png", [1001, 1012])
        self.assertEqual(files, ["/lib/skin.1001.png", "/lib/skin.1012.png"])
        self.assertEqual(expand_tiles("/t/<UVTILE>.png", [1012]), ["/t/u2_v2.png"])
        dep = Dependency("image 'Skin'", "/lib/skin.<UDIM>.png", "/lib/skin.<UDIM>.png", files, datablock=2)
        result = plan([dep], "/proj")
        self.assertEqual(result.rewrites[0][2], "//_kiln_external/lib/skin.<UDIM>.png")
        self.assertEqual(len(result.entries), 2)

    def test_linked_relative_paths_that_still_resolve_need_no_warning(self):
        dep = Dependency(
            "image 'Skin' (linked)", "//tex/skin.png", "/lib/hero/tex/skin.png", ["/lib/hero/tex/skin.png"],
            library="/lib/hero/hero.blend",
        )
        self.assertEqual(plan([dep], "/proj").warnings, [])

    def test_linked_absolute_paths_are_warned_about(self):
        dep = Dependency(
            "image 'Skin' (linked)", "/lib/hero/tex/skin.png", "/lib/hero/tex/skin.png", ["/lib/hero/tex/skin.png"],
            library="/lib/hero/hero.blend",
        )
        [warning] = plan([dep], "/proj").warnings
        self.assertIn("/lib/hero/tex/skin.png", warning)

    def test_too_many_files_is_an_error(self):
        deps = [Dependency(f"image {i}", f"/x/{i}.png", f"/x/{i}.png", [f"/x/{i}.png"]) for i in range(1000)]
        with self.assertRaises(ValueError):
            plan(deps, "/proj")


class SequenceTests(unittest.TestCase):
    def test_a_sequence_is_every_file_numbered_like_the_first(self):
        with tempfile.TemporaryDirectory() as folder:
            for name in ("shot_001.png", "shot_002.png", "shot_010.png", "other_001.png", "shot_001.jpg"):
                open(os.path.join(folder, name), "w").close()
            files = expand_sequence(os.path.join(folder, "shot_001.png"))
            self.assertEqual(
                [os.path.basename(f) for f in files], ["shot_001.png", "shot_002.png", "shot_010.png"]
            )


if __name__ == "__main__":
    unittest.main()
