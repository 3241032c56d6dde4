"""The drift consumer: windows over ``predictions.v1`` and ``labels.v1``, drift reports, retrain requests.

- ``windows``: a window's rows and its figures (class mix, confidence, text length, images, agreement);
- ``estimation``: the weighted F1 and accuracy that calibrated top-k probabilities imply (CBPE's idea);
- ``calibration``: the drift score and its threshold, bootstrapped from the reference profile;
- ``evidently_adapter``: the one place that calls Evidently (pinned): HTML report and its figures;
- ``episodes`` and ``triggers``: when a window alarms, and one retrain request per episode;
- ``reports``: the ``drift_reports`` rows; ``monitor``: Prometheus metrics;
- ``app`` and ``consumer``: the faust application and its agents.
"""
