-- Run once by the primary container (docker-compose.yml): replication user and shard databases.
CREATE ROLE replicator WITH REPLICATION LOGIN PASSWORD 'replicator';
CREATE DATABASE shard_0 OWNER app;
CREATE DATABASE shard_1 OWNER app;
CREATE DATABASE shard_2 OWNER app;
CREATE DATABASE shard_3 OWNER app;
