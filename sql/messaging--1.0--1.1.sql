/* sql/messaging--1.0--1.1.sql: upgrade from 1.0 to 1.1 */

-- complain if this script is sourced in psql rather than through ALTER EXTENSION
\echo Use "ALTER EXTENSION messaging UPDATE TO '1.1'" to load this file. \quit
