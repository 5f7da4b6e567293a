"""What a kind of classification task owns: its loss, scores, evaluation and calibration.

:mod:`training.tasks.single_label` is one label per text (softmax over the classes).
"""
