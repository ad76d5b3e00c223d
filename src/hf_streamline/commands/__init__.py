"""Sub-commands of the ``hf-streamline`` CLI (one module each, listed in ``hf_streamline.cli.COMMANDS``)."""
