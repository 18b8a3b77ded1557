-- One server, one database per owner: the monolith's, each extracted service's, and the
-- proxies' control database.
CREATE DATABASE shop;
CREATE DATABASE catalog;
CREATE DATABASE inventory;
CREATE DATABASE control;
