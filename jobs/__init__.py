"""The Ray batch job, the Parquet ledger, rerender and audit."""
