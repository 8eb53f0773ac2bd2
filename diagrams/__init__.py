"""Sequence diagrams drawn from traces: the model (``sequence``), Mermaid text (``mermaid``) and a
standalone SVG drawn with matplotlib (``sequence_svg``). Everything but the SVG renderer is sans-IO
apart from reading the trace files given to ``sequence_from_traces``."""
