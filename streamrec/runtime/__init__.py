"""The ground floor every room stands on: typed configuration (``config``), Kafka topics, offsets
and reads (``kafka``), logging set-up (``logging_config``), the atomic file write (``files``) and
how to reach the Ray head (``ray_access``). It imports nothing of streamrec's stages or shell;
``tests/test_architecture.py`` keeps it that way. Import the modules, not this package: it stays
empty so that importing one of them costs nothing more.
"""
