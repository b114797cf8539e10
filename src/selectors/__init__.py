"""Selectors: given what the pipeline computed about the seed corpus, pick k examples.

One file per selector behind ``base.Selector``; the Hydra config ``conf/selector/<name>.yaml``
names the class with ``_target_``, which is the registry.
"""
