"""The toolkit's pieces inside other libraries' trainers (``trl_grpo``: TRL's GRPOTrainer). Each module imports
its library only where it is used, behind an optional extra (``pip install -e '.[trl]'``)."""
