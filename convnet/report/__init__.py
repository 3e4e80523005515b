"""``convnet report``: one self-contained HTML page a person would rather look at than read.

    from convnet.report import write_report
    from convnet.spec import resolve_model
    write_report(resolve_model("runs/digits/model.json"), "report.html",
                 source="runs/digits/model.json", data="digits")

The page (no network access when opened: pictures are PNG data URIs or inline SVG, the
style and the one small script are inline) shows, each in a section with a stable id:

- ``status``: whether the weights are trained (a zoo name or notation is not);
- ``architecture``: every output volume as a box scaled to W, H and D, branches drawn
  as branches (``diagram``);
- ``summary``: the numbers of ``convnet summary``, memory and receptive field included;
- ``training``: the curves and the run's settings, from the model's run directory;
- ``filters``: the first layer's filters (``plot.filter_grid``), or the first CONV
  layer's, named, when the first weighted layer is not a CONV layer;
- ``activations``: for a few sample images, the input and every stage's maps, all
  channels (``pictures.activation_grid``);
- ``evaluation``: with a data set, accuracy, confusion matrix with class names, and the
  most confidently wrong test images.

Pictures need matplotlib and Pillow (the ``plot`` extra).
"""

from convnet.report.build import (
    SECTIONS,
    build_report,
    checkpoint_state,
    run_config,
    run_directory,
    write_report,
)

__all__ = ["SECTIONS", "build_report", "checkpoint_state", "run_config", "run_directory",
           "write_report"]
