"""`pip install .` ships every subpackage: a folder of flowkern/ with an __init__.py that setup.py does not list is
missing from a non-editable install (the tests of an editable one would not notice)."""
import ast
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_setup_lists_every_subpackage():
    tree = ast.parse(open(os.path.join(ROOT, "setup.py")).read())
    listed = next(ast.literal_eval(kw.value) for node in ast.walk(tree) if isinstance(node, ast.Call)
                  for kw in node.keywords if kw.arg == "packages")
    found = {os.path.relpath(d, ROOT).replace(os.sep, ".") for d, _, files in os.walk(os.path.join(ROOT, "flowkern"))
             if "__init__.py" in files}
    assert found <= set(listed), f"setup.py packages misses {sorted(found - set(listed))}"
