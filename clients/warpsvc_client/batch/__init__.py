"""``warpsvc-batch``: warp, align or map the Jacobian of every image in a folder, or stack it.

Small modules, one job each (see ``docs/batch.md``):

* :mod:`.paths`     discovery (recursive, globs), shards, output names, the guards on both trees,
                    escaping names for terminals and drawing;
* :mod:`.storage`   local folders (every access by descriptor, no link followed) and fsspec URLs;
* :mod:`.probe`     ``--max-pixels``: the server's header probe, before anything is decoded or sent;
* :mod:`.pixels`    files <-> arrays in OpenCV's layout without OpenCV (Pillow, tifffile);
* :mod:`.record`    the manifest record (one frozen type, one writer);
* :mod:`.jobs`      the job spec (options, transforms) and the per-image work (one trace span each),
                    shared by backends;
* :mod:`.backends`  where the pixels are computed: gRPC targets or ``local`` (the library, the only
                    user of OpenCV and numba here);
* :mod:`.files`     the folder lock and run registry, sweeping this folder's temporary files;
* :mod:`.manifest`  the JSONL manifest (local or remote) and ``--resume``;
* :mod:`.pipeline`  the local pool / RPC threads: bounded in-flight work, progress;
* :mod:`.dask_engine` ``--engine dask``: the per-image work on a Dask cluster;
* :mod:`.report`    ``report.html`` and ``contact_sheet.png``;
* :mod:`.stack_job` ``stack``: a folder registered as a sequence (``align_sequence`` or the
                    ``AlignStream`` RPC), with :mod:`.stack_passes` (register + resample, then
                    stack), :mod:`.stack_combine`, :mod:`.stack_trajectory` and :mod:`.stack_report`;
* :mod:`.cli`       the command line.
"""
