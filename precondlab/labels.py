"""Class labels travel as an optional keyword. ``class_labels=`` reaches a component (teacher,
preconditioner, network) only when there are labels, so that an unconditional one, a plugin's
too, is called exactly as its contract says: ``denoise(x, t)``, ``jump(net, x, t, s)``."""


def with_labels(fn, *args, class_labels=None):
    """fn(*args), with class_labels= added when there are labels (one-hot, one row per example)."""
    return fn(*args) if class_labels is None else fn(*args, class_labels=class_labels)
