"""The stage roles of a rung, one per file, each a Ray actor: rollout, judge, train.

Classes are plain; `stages.actors.spawn` turns one into a Ray actor with the engine environment.
"""
