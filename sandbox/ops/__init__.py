"""Operations: what brings a sandbox up on a machine, beside the domain modules.

- ``runner_image``: the runner image's content-hashed tag (``image_tag``) and
  ``ensure_image`` (reuse, or build from runner/Dockerfile, smoke test, prune);
- ``rootfs``: the offline build path (``RECIPE``, debootstrap root filesystem,
  duckdb/pyarrow wheels, ``docker import``) when no registry answers;
- ``engine``: a Docker engine that answers (``ensure_docker``: ping, start
  ``dockerd``, or ``apt-get install docker.io``);
- ``demo_data``: the fabricated "raw" datasets the demo sandbox serves.

Imports go one way: ``runner_image`` → ``rootfs`` → ``engine``; nothing in the
domain imports this package except the Docker executor (for the default tag).
"""
