%% @doc Helpers shared by the EUnit modules of erlmcp_flow.
-module(erlmcp_flow_test_util).

-export([untyped/1]).

%% @doc Returns `Term' unchanged, typed `term()'.
%%
%% The tests pass wrong-typed arguments on purpose, to check that every function answers
%% `{error, {invalid_argument, _}}' rather than raising. Dialyzer rightly reports such a call
%% as breaking the callee's contract (and everything after it as unreachable); wrapping the
%% deliberately wrong argument in `untyped/1' says that it is deliberate, and keeps the rest of
%% the test analysed. Being exported, its success typing is `any() -> any()' whatever the
%% callers pass.
-spec untyped(term()) -> term().
untyped(Term) ->
    Term.
