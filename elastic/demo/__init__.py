"""The demo application: SN-Net on real Fashion-MNIST, trained, evaluated and reported.

`data` reads the Debian package's IDX files, `train` is the shared training loop, `evaluate`
scores every subnet, `latency` times them, `report` and `plot` write `report.json` and
`pareto.png`; `pipeline.run_demo` strings them together for `elastic demo`.
"""
