"""dora: distill or annotate? Label a pool once with a fine-tuned teacher, train a compact student.

Stage functions (the CLI calls these; so can you)::

    from dora.pipeline.stages.teacher_label import TeacherLabelConfig, teacher_label
    from dora.pipeline.stages.train_student import TrainStudentConfig, train_student

    teacher_label(TeacherLabelConfig(task="fever", teacher="t5-large-dir", train="gold.jsonl",
                                     pool="pool.jsonl", out="cache/"))
    train_student(TrainStudentConfig(task="fever", student="t5-small-dir", cache="cache/",
                                     dev="dev.jsonl", test="test.jsonl", out="student/"))
"""

__version__ = "0.1.0"
