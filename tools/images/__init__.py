"""Building letskencrypt's container images offline, one module per job.

- common: paths, logging, hashing of inputs, byte-compiling with Debian's python3.11;
- debs: the base's Debian package closure, resolved with apt-cache and fetched;
- rootfs: the base's root file system, unpacked from those .debs, with the
  maintainer scripts' work done by hand, as a tar;
- wheels: which role gets which wheels, the runtimes that carry them, and the
  staged site directories (wheels, and the letskencrypt package);
- containerfile: the Containerfile templates, rendered per runtime and role;
- podman: building, up-to-date checks by input label, layers and sizes.

tools/build_images.py is the entry point that puts them together.
"""
