"""Approvals, the pure part: the binding an approval is tied to, and who may decide a held call."""

from __future__ import annotations

import pytest

from bastion.policy.approvals import ApprovalPolicy, Decidable, binding_hash, can_decide, refusal, text_hash
from bastion.policy.errors import AlreadyVoted, ConfigError, NotAllowedToDecide, SelfApproval
from bastion.policy.identity import Identity

ALICE = Identity("alice", frozenset({"dev", "dba"}), email="Alice@Example.com")
BOB = Identity("bob", frozenset({"dba"}))
CAROL = Identity("carol", frozenset({"security"}))
HELD = Decidable("hold-1", "alice", ("dba", "security"), requester={"subject": "alice", "email": "alice@example.com"})


def test_the_binding_changes_with_one_character_of_the_text() -> None:
    a = binding_hash("alice", "prod", "sql_execute", "DELETE FROM t WHERE id = 1")
    assert a == binding_hash("alice", "prod", "sql_execute", "DELETE FROM t WHERE id = 1")
    assert a != binding_hash("alice", "prod", "sql_execute", "DELETE FROM t WHERE id = 1 ")
    assert a != binding_hash("alice", "prod", "sql_execute", "DELETE FROM t WHERE id = 2")


def test_the_binding_changes_with_requester_connection_and_tool() -> None:
    base = binding_hash("alice", "prod", "sql_execute", "x")
    assert base != binding_hash("bob", "prod", "sql_execute", "x")
    assert base != binding_hash("alice", "staging", "sql_execute", "x")
    assert base != binding_hash("alice", "prod", "sql_query", "x")
    assert base != binding_hash("alice", None, "sql_execute", "x")


def test_the_binding_encoding_is_unambiguous() -> None:
    # Moving a separator between fields must never give the same binding.
    assert binding_hash("a", "b|c", "t", "x") != binding_hash("a|b", "c", "t", "x")
    assert binding_hash("a", "b", "t", 'x", "y') != binding_hash("a", "b", 't", "x', "y")


def test_the_text_hash_is_sha256_of_the_exact_text() -> None:
    assert text_hash("") == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"


def test_an_approver_in_an_approver_group_may_decide() -> None:
    assert can_decide(BOB, HELD) is None
    assert can_decide(CAROL, HELD) is None


def test_the_requester_may_never_decide_their_own_call_even_as_an_approver() -> None:
    reason = can_decide(ALICE, HELD)
    assert reason == "`alice` asked for held call `hold-1` and cannot approve or deny it themself"
    error = refusal(ALICE, HELD)
    assert isinstance(error, SelfApproval) and error.code == "self_approval"
    assert "Another member of `dba`, `security` must decide it." in error.for_agent()


def test_the_requester_under_another_subject_with_the_same_email_is_refused() -> None:
    other_account = Identity("alice-admin", frozenset({"dba"}), email="ALICE@example.com")
    assert isinstance(refusal(other_account, HELD), SelfApproval)


def test_someone_in_no_approver_group_is_refused_and_told_who_may_decide() -> None:
    mallory = Identity("mallory", frozenset({"dev"}))
    error = refusal(mallory, HELD)
    assert type(error) is NotAllowedToDecide and error.code == "not_an_approver"
    assert error.for_agent() == ("[not_an_approver] `mallory` is not in an approver group of held call `hold-1`. "
                                 "Only members of `dba`, `security` may approve or deny it.")


def test_an_approver_who_voted_already_is_refused() -> None:
    class Vote:
        approver, approve = "bob", True

    held = Decidable("hold-2", "alice", ("dba",), votes=(Vote(),), min_approvals=2)
    error = refusal(BOB, held)
    assert isinstance(error, AlreadyVoted)
    assert "has already approved" in error.message and "2 approvals from different people" in (error.hint or "")
    assert can_decide(Identity("dave", frozenset({"dba"})), held) is None


def test_an_approval_policy_needs_groups_a_positive_minimum_and_a_positive_ttl() -> None:
    assert ApprovalPolicy("dba").approver_groups == frozenset({"dba"})  # type: ignore[arg-type]
    assert ApprovalPolicy(frozenset({"dba"})).min_approvals == 1
    with pytest.raises(ConfigError, match="at least one approver group"):
        ApprovalPolicy(frozenset())
    with pytest.raises(ConfigError, match="min_approvals"):
        ApprovalPolicy(frozenset({"dba"}), min_approvals=0)
    with pytest.raises(ConfigError, match="ttl"):
        ApprovalPolicy(frozenset({"dba"}), ttl_s=0)
