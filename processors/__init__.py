"""Processors (a wing): the faust-streaming app that validates, chains per partition,
signs and stores blocks, its source gate and its dead letters."""
