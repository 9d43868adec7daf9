import threading

import pytest

from oocstore.budget import BudgetAccountant, MemoryBudget
from oocstore.errors import BudgetError, UsageError


def test_budget_parses_binary_units_and_refuses_decimal():
    b = MemoryBudget(cpu="512MiB", gpu="1GiB", disk=4096)
    assert (b.cpu, b.gpu, b.disk) == (512 << 20, 1 << 30, 4096)
    with pytest.raises(UsageError, match=r"write 8GiB"):
        MemoryBudget(cpu="8GB")
    assert MemoryBudget().cpu is None


def test_charges_are_refused_up_front_with_numbers_and_fix():
    acct = BudgetAccountant(MemoryBudget(cpu="1MiB"))
    a = acct.charge("cpu", 600 << 10, "cpu cache")
    with pytest.raises(BudgetError, match=r"cpu budget 1.00 MiB is too small: staging needs "
                                          r"500.00 KiB on top of 600.00 KiB already held "
                                          r"\(cpu cache 600.00 KiB\).*raise the cpu budget"):
        acct.charge("cpu", 500 << 10, "staging")
    assert acct.charged("cpu") == 600 << 10  # the refused charge left no trace
    a.release()
    a.release()  # idempotent
    with acct.charge("cpu", 1 << 20, "staging"):
        assert acct.charged("cpu") == 1 << 20
    assert acct.charged("cpu") == 0
    assert acct.peak("cpu") == 1 << 20


def test_custom_fix_text_and_unlimited_tier():
    acct = BudgetAccountant(MemoryBudget(gpu=0))
    with pytest.raises(BudgetError, match="lower the prefetch depth"):
        acct.charge("gpu", 1, "prefetch slot", fix="lower the prefetch depth")
    acct.charge("cpu", 1 << 40, "huge")  # no cpu limit given
    assert acct.available("cpu") is None and acct.available("gpu") == 0


def test_concurrent_charges_never_exceed_the_budget():
    limit = 1000
    acct = BudgetAccountant(MemoryBudget(cpu=limit))
    seen = []

    def worker():
        for _ in range(2000):
            try:
                c = acct.charge("cpu", 7, "slot")
            except BudgetError:
                continue
            seen.append(acct.charged("cpu"))
            c.release()

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert acct.charged("cpu") == 0
    assert max(seen) <= limit and acct.peak("cpu") <= limit
