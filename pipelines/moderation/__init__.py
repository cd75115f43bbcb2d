"""The moderation loop: review export and label import, hash-bank additions, calibration, rescoring."""
