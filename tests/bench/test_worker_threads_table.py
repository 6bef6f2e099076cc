"""The worker-threads measurement (bench/worker_threads.py): its table."""

from elastic.bench.worker_threads import table


def test_the_measurement_table_has_a_row_per_subnet_and_batch_and_a_column_per_setting():
    result = {
        "unit": "median ms per forward",
        "cpus": 2,
        "openmp_cpus": 2,
        "load_average_1min": 0.5,
        "parallel_backend": "ATen parallel backend: OpenMP",
        "rows": [
            {"subnet": 0, "batch": 1, "main, 2 threads": 0.94, "beside an idle team of 2": 5.374},
            {"subnet": 2, "batch": 8, "main, 2 threads": 2.35, "beside an idle team of 2": 5.65},
        ],
    }
    lines = table(result).splitlines()
    assert lines[0] == "# worker threads"
    assert "| subnet, batch | main, 2 threads | beside an idle team of 2 |" in lines
    assert "| 0, 1 | 0.94 | 5.37 |" in lines and "| 2, 8 | 2.35 | 5.65 |" in lines
