"""mkdocs hook: publish the committed reports (figures and tables under ``reports/``) with the
site, so that the pages link them by their repository path without copying them into docs/."""
from pathlib import Path

from mkdocs.structure.files import File

ROOT = Path(__file__).resolve().parents[1]


def on_files(files, config):
    for path in sorted((ROOT / "reports").iterdir()):
        if path.suffix in {".png", ".pdf", ".md"}:
            files.append(File.generated(config, f"reports/{path.name}", abs_src_path=str(path)))
    return files
