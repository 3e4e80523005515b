"""The examples in the docstrings run and give what they show (doctest)."""

import doctest
import importlib
import pkgutil

import numpy as np
import pytest

import convnet

MODULES = sorted(info.name for info in pkgutil.walk_packages(convnet.__path__, "convnet.")
                 if not info.name.endswith("__main__"))


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    module = importlib.import_module(name)
    with np.printoptions(legacy=False):
        result = doctest.testmod(module, optionflags=doctest.ELLIPSIS
                                 | doctest.NORMALIZE_WHITESPACE, verbose=False)
    assert result.failed == 0, f"{result.failed} of {result.attempted} examples failed"


def test_every_module_is_found():
    assert {"convnet.analysis", "convnet.models.notation", "convnet.functional.conv.winograd",
            "convnet.train.loop"} <= set(MODULES)
