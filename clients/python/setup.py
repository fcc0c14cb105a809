"""Builds kiln-client, generating `kiln_client.v1` from proto/kiln/v1 with
grpcio-tools (protoc, message stubs with .pyi types, gRPC stubs).

The protos are read from the Kiln checkout this folder sits in
(`../../proto`), or from `proto/` inside an sdist, which carries a copy.
"""

import importlib.resources
import re
import shutil
import tempfile
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py
from setuptools.command.sdist import sdist

HERE = Path(__file__).resolve().parent
# The public API; worker.proto is the workers' internal protocol.
PROTOS = ("jobs.proto", "assets.proto", "auth.proto")
GENERATED_NOTE = '"""Generated from proto/kiln/v1 when kiln-client was built; do not edit."""\n'


def proto_root() -> Path:
    for candidate in (HERE / "proto", HERE.parent.parent / "proto"):
        if (candidate / "kiln" / "v1" / "jobs.proto").is_file():
            return candidate
    raise SystemExit("kiln-client: proto/kiln/v1 not found; build it from a Kiln checkout or its sdist")


def generate(package_dir: Path) -> None:
    from grpc_tools import protoc

    well_known = importlib.resources.files("grpc_tools") / "_proto"
    with tempfile.TemporaryDirectory() as out:
        args = [
            "grpc_tools.protoc",
            f"-I{proto_root()}",
            f"-I{well_known}",
            f"--python_out={out}",
            f"--pyi_out={out}",
            f"--grpc_python_out={out}",
            *(f"kiln/v1/{name}" for name in PROTOS),
        ]
        if protoc.main(args) != 0:
            raise SystemExit("kiln-client: protoc failed on proto/kiln/v1")
        package_dir.mkdir(parents=True, exist_ok=True)
        for generated in sorted((Path(out) / "kiln" / "v1").iterdir()):
            text = generated.read_text()
            # protoc names sibling modules absolutely (`from kiln.v1 import`);
            # inside this package they are relative.
            text = re.sub(r"^from kiln\.v1 import (\w+)", r"from . import \1", text, flags=re.M)
            (package_dir / generated.name).write_text(text)
        (package_dir / "__init__.py").write_text(GENERATED_NOTE)


class BuildWithProtos(build_py):
    def run(self) -> None:
        super().run()
        if getattr(self, "editable_mode", False):
            generate(HERE / "src" / "kiln_client" / "v1")
        else:
            generate(Path(self.build_lib) / "kiln_client" / "v1")


class SdistWithProtos(sdist):
    def make_release_tree(self, base_dir: str, files: list[str]) -> None:
        super().make_release_tree(base_dir, files)
        target = Path(base_dir) / "proto" / "kiln" / "v1"
        target.mkdir(parents=True, exist_ok=True)
        for name in PROTOS:
            shutil.copy(proto_root() / "kiln" / "v1" / name, target / name)


setup(cmdclass={"build_py": BuildWithProtos, "sdist": SdistWithProtos})
