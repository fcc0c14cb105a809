"""Zips the add-on for Blender's "Install from Disk" (legacy add-on zip:
one top-level `kiln_blender/` folder). Blender 4.2+ can also build an
extension package itself: `blender --command extension build --source-dir kiln_blender`.

Usage: python3 package.py OUT.zip
"""

import os
import sys
import zipfile

HERE = os.path.dirname(os.path.abspath(__file__))
SOURCE = os.path.join(HERE, "kiln_blender")


def main(out: str) -> None:
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as archive:
        for folder, dirs, names in os.walk(SOURCE):
            dirs[:] = sorted(d for d in dirs if d != "__pycache__")
            for name in sorted(names):
                if name.endswith(".pyc"):
                    continue
                path = os.path.join(folder, name)
                archive.write(path, os.path.relpath(path, HERE))
    print(out)


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python3 package.py OUT.zip")
    main(sys.argv[1])
