-- Fencing: the election token (etcd revision) of the scheduler that leads.
-- Every state write a leader makes first checks that this row still holds
-- its token (taking a share lock, so a new leader's claim waits for writes
-- in progress), and a leader claims the row only with a newer token.
CREATE TABLE leader_fence (
    id    boolean PRIMARY KEY DEFAULT true CHECK (id),
    token bigint  NOT NULL
);
