

def test_constrained_verdict_says_when_plain_muon_already_meets_the_target():
    import pandas as pd

    from muonft.report.study import constrained_verdict

    def table(plain_meets):
        return pd.DataFrame({"scheme": ["Muon full", "Muon max_drift=0.1", "Muon update_rank=4"],
                             "meets_target": [plain_meets, True, False],
                             "gap": [0.01, 0.02, 0.3], "gap_ci": [0.04, 0.03, 0.02],
                             "adamw_ci95": [0.03] * 3})

    assert constrained_verdict(table(False)) == "Schemes meeting the target: Muon max_drift=0.1."
    both = constrained_verdict(table(True))
    assert both.startswith("Schemes meeting the target: Muon max_drift=0.1. Plain Muon full")
    assert "+0.01 ± 0.04" in both and "no mismatch for a scheme to fix" in both
    none = table(False).assign(meets_target=False)
    assert constrained_verdict(none) == "Schemes meeting the target: none."
