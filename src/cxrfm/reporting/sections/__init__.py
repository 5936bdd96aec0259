"""One module per task family: ``console(result) -> list[str]`` and ``html(result, assets) -> str``.

A task's registration (:class:`cxrfm.tasks.registry.Task`) names these as ``"module:function"``
strings, so they are imported only when a result is shown."""
