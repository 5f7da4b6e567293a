"""What a kind of classification task owns (:mod:`training.tasks.base`): its targets, loss, curve scores,
calibration and decision rule, and final scores.

:mod:`training.tasks.single_label` is one label per text (softmax over the classes);
:mod:`training.tasks.multi_label` is any number of labels per text (a sigmoid per label).
"""
