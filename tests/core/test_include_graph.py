"""The build's boundaries: the include graph follows docs/architecture.md's allowed arrows."""
import os
import shutil

from include_graph import check

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))


def copy_tree(dst):
    for d in ("core", "widgets", "app", "docs"):
        shutil.copytree(os.path.join(ROOT, d), os.path.join(dst, d),
                        ignore=shutil.ignore_patterns("*.png", "*.h5", "*.safetensors"))
    return str(dst)


def test_the_tree_follows_the_allowed_arrows():
    assert check(ROOT) == []


def test_a_widget_including_the_model_fails(tmp_path):
    root = copy_tree(tmp_path)
    with open(os.path.join(root, "widgets", "figureview.cpp"), "a", encoding="utf-8") as f:
        f.write('\n#include "model/model.h"\n')
    problems = check(root)
    assert any("widgets/figureview.cpp" in p and "widgets -> model" in p for p in problems), problems


def test_torch_outside_its_files_and_beside_qt_fails(tmp_path):
    root = copy_tree(tmp_path)
    with open(os.path.join(root, "core", "views", "views.cpp"), "a", encoding="utf-8") as f:
        f.write('\n#include <torch/torch.h>\n')
    with open(os.path.join(root, "app", "gui", "jobs.cpp"), "a", encoding="utf-8") as f:
        f.write('\n#include "model/model_impl.h"\n')
    problems = check(root)
    assert any("core/views/views.cpp: includes LibTorch" in p for p in problems), problems
    assert any("app/gui/jobs.cpp: includes both Qt and LibTorch" in p for p in problems), problems


def test_a_cycle_in_the_allowed_arrows_fails(tmp_path):
    root = copy_tree(tmp_path)
    doc = os.path.join(root, "docs", "architecture.md")
    with open(doc, encoding="utf-8") as f:
        text = f.read()
    text = text.replace("- base: (nothing)", "- base: model")
    with open(doc, "w", encoding="utf-8") as f:
        f.write(text)
    assert any("cycle" in p for p in check(root))
