"""The study engine: everything between a study's configuration and its stored tables.

It uses the core (data, models, training, metrics, analysis) and nothing above it; the CLIs
(`bench.run`, `bench.dashboard`) drive it, and the report reads only the tables it stores.

    config      the typed schema, its checks, and `compose_config` (studies/<name>.yaml + overrides)
    search      the search space (suggest), iso sizing, a configuration's sizes
    sampler     what each search slot trains: the shared grid, or TPE on the lower slots' results
    records     RunRecord (run.json = a runs.parquet row = trial attributes = W&B summary), file paths
    storage     Optuna storage, study names, fingerprints, slots, heartbeats
    context     data, validation and test sets a worker's trials share; the device
    trial       one run: plan, build, train, record, write its files
    predictions per-prediction scores: per-run files, predictions.parquet (schema, write, gather)
    stages      what a claimed slot does: a search trial, a final run, a mutual-stage cohort
    worker      the claiming loop: which stage's slot to take next
    pool        worker processes and the study's progress line
    reference   what models are read against: baselines, the memoriser, the Bayes ceiling, OEIS
    collect     the derived tables (results, history, runs, trials, overlap, decay, cka, ceiling, splits,
                oeis, mutual*, predictions)
    tracking    Weights & Biases runs
    provenance  commit, machine and command for meta.yaml

Inside, imports point one way: config <- search, sampler, records, storage, context <- trial <-
stages <- worker <- pool; trial and collect write and read predictions (which reads records);
collect reads records, storage, context and reference (which reads context); tracking and
provenance stand alone.
"""
