"""raagr2-slim's tooling: everything that is *not* shipped inside a bundle.

- :mod:`.authoring`: read bundle configs, generate variant bundles from a base bundle (edit time);
- :mod:`.compression`: structured pruning, criteria, schedules, SNIP, distillation, the compression loop and
  the MONAI step that writes pruned-N% bundles;
- :mod:`.shipping`: TorchScript/ONNX exports, self-contained archives, model-zoo checks (release time);
- :mod:`.reports`: Markdown tables, figures, compression reports;
- :mod:`.jobs`: the end-to-end main job and the ``python -m monai.bundle`` runner.

The runtime layer that bundle configs name is :mod:`custom_modules`; it never imports this package.
"""
