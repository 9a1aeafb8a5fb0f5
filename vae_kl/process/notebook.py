"""Whether this process is a notebook's kernel (Jupyter, Colab), where progress bars and inline figures belong."""

import sys


def in_notebook() -> bool:
    """True inside a running IPython kernel (its shell has a kernel). A process that merely imported ipykernel
    (nbclient, test runners and others do) or a terminal IPython is not a notebook."""
    ipython = sys.modules.get("IPython")
    get_shell = getattr(ipython, "get_ipython", None)
    return getattr(get_shell() if get_shell else None, "kernel", None) is not None
