"""``warpsvc-batch``: warp, align or map the Jacobian of every image in a folder.

Small modules, one job each (see ``docs/batch.md``):

* :mod:`.paths`     discovery (recursive, globs), output names, the guards on both trees;
* :mod:`.jobs`      the job spec (options, transforms) and the per-image work, shared by backends;
* :mod:`.backends`  where the pixels are computed: gRPC targets or ``local`` (a process pool);
* :mod:`.files`     atomic writes (temp file in the same folder + fsync + ``os.replace``);
* :mod:`.manifest`  the JSONL manifest and ``--resume``;
* :mod:`.pipeline`  bounded in-flight work, retries, progress, the summary;
* :mod:`.report`    ``report.html`` and ``contact_sheet.png``;
* :mod:`.cli`       the command line.
"""
