"""What a study shows, and the files it goes to.

- :mod:`~hptransfer.report.study_report`: ``write_report`` (Markdown + HTML) and
  ``write_plot_page`` (what ``hptransfer plot`` writes);
- :mod:`~hptransfer.report.coord_check`: the coord check's JSON and PNG;
- :mod:`~hptransfer.report.plots`: the figures; :mod:`~hptransfer.report.tables`: the one
  table renderer; :mod:`~hptransfer.report.files`: the one atomic writer.

Nothing is imported here, so ``hptransfer.report.files`` stays light (no torch).
"""
