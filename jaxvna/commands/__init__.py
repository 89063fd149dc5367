"""The commands built on top of the trainer, one module each: `demo` (VNA against the
baselines), `scaling` (error against training-set size), `new_subject` (accuracy against
the images of a new subject used), `select` (settings chosen on the validation split),
`features` (a pretrained backbone's features of a dataset), `reproduce` (re-run a result
file's command), `bench` (the step against the matmul peak), `dryrun` (compile for N
devices without running). `jaxvna/cli.py` maps each command-line verb to one of these, or
to a verb a method adds (`registry.Method.commands`).
"""
